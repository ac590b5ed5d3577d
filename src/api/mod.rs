//! Admin REST API (/api/v1), admin auth and the embedded panel assets.
