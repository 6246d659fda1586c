"""Training: objective, optimiser and schedule, the PPA step, the epoch loop, the one training
set-up (central, site, DP) and central training."""
