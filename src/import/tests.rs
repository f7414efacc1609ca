//! Unit tests of the import.
