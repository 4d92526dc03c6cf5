"""Real directory servers (OpenLDAP slapd, Samba AD DC) started on loopback for tests."""
