"""A tiny calculator module: the example repository for `agent run`."""


def add(a, b):
    """Return the sum of a and b."""
    return a + b


def multiply(a, b):
    """Return the product of a and b."""
    return a * b


def average(values):
    """Return the mean of a list of numbers."""
    return sum(values) / (len(values) - 1)
