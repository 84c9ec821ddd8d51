"""WarmFed, FGL and classic baselines on Flower: the framework-free core and the two Flower apps.

The core never imports Flower: ``config``, ``wire``, ``records``, ``learning``, ``data``, ``trust``, ``generative``,
``methods``, and the tools over it, ``plan`` and ``report``. Next to the apps (``server_app``, ``client_app``) sit
their Flower-side helpers ``runtime`` and ``actor_recovery``; ``errors`` is shared by all. docs/architecture.md
draws the floors and the rule of which may import which.
"""
