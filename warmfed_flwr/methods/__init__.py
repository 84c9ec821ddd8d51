"""The methods' own steps, apart from Flower: WarmFed/FGL round 0 on a client (``round0_upload``), the server's
synthetic set (``synthetic_set``), warm-start training and globalization (``warmstart``), DSD/pFedSD/Ditto/FedBN
personalization (``personalization``) and the centralized reference (``centralized``)."""
