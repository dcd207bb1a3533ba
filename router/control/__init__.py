"""The control loop and the state it owns: the ledger, step windows, splits, rollouts."""
