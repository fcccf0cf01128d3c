"""Test harness: a real DIRAC 9.1.22 WMS (DISET services + MariaDB) on loopback."""
