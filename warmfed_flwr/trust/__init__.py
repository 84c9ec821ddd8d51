"""Trust and privacy: which node may use which client name (``identity``), local differential privacy on uploads
(``dp``), the round-0 check that each embedding row embeds its class (``embedding_classes``), the client's audit of
the synthetic images (``privacy_audit``) and the fault-injection test hook (``faults``)."""
