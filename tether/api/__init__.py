"""The peer self-service API and what it needs: address allocation, client configs."""
