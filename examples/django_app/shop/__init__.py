"""A Django app whose orders are paid for in tokens, in the order's own transaction."""
