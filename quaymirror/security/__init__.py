"""Security helpers: SSRF checks for registry references and secret encryption."""
