"""The roster: the domain model and its rules, shared by sync, gateway and portal."""
