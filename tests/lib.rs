//! Intentionally empty: this package exists for its integration tests (`all/`).
