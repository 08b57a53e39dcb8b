"""Stage 3, choosing what goes: importance scores (`importance`), MAC/param budgets
(`budget`), and the plan (`plan`: options, selection, JSON records)."""
