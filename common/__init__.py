"""What every package may import: the user-error types and the registry of swappable parts."""
