"""Identity: client secrets, signing keys, gateway tokens, trusted external issuers, the user
directory and the upstream accounts' credentials. No aiohttp.web here."""
