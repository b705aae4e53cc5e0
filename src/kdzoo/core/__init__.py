"""The bottom layer above config: batch types, stateless collectives and atomic file writes."""
