"""The profile domain: aggregate, value objects and errors. Standard library only."""
