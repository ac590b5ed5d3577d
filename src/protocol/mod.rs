//! Pure wire-format code (no IO): the internal representation and one module per provider format.
