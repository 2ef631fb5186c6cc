"""Small building blocks with no knowledge of Keel, on the standard library only."""
