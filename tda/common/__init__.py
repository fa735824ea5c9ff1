"""Small shared helpers used by every stage: errors, atomic writes, paths, shipped data, hub check."""
