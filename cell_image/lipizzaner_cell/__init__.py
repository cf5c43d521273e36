"""The Lipizzaner cell: one grid cell's co-evolution engine and its runtime, the local
launcher and the `lipizzaner` command (depends on lipizzaner_core, never on the operator)."""
