"""The built-in demo: a sample shop API (v1 production, v2 staging with planted drift), seeded
shopper traffic, and the runner that takes them through every stage as a user would."""
