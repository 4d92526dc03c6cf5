"""The directory sync: read (directory), plan (pure), apply (one transaction), run."""
