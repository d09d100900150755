"""Tools the model can call (read, edit, write, grep, glob, shell, git)."""
