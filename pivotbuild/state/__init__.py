"""What pivotbuild remembers between builds: stat cache, lockfile, journal."""
