//! data/config.json plus OCTOPUS_* overrides, validated into Config.
