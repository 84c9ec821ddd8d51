"""WarmFed, FGL and classic baselines on Flower: the framework-free core and the two Flower apps."""
