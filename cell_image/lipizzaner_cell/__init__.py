"""The Lipizzaner cell: one grid cell's co-evolution engine and its runtime."""
