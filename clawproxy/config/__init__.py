"""The configuration layer: the schema (typed sections with defaults), the rules, the loader."""
