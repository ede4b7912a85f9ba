"""Console entry points: ssl-pretrain, ssl-probe."""
