"""The comparison and decision core: pure functions over counters and bodies."""
