"""visualisation."""
