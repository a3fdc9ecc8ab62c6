"""Per-architecture plugins: one module per model family, registered by name."""
