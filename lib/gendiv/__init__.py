"""gendiv."""
