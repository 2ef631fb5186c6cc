"""Protocol adapters. Each package maps its wire format to the service layer in one place."""
