"""Built-in architectures and loading of user models."""
