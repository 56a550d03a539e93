def test_user_endpoint(client, world):
    response = client.get("/api/v1/user/", headers=world.headers("admin"))
    assert response.status_code == 200
    assert response.get_json()["username"] == "devtable"
