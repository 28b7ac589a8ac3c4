"""What every hosted API call shares, below the model providers and the fine-tuning backends that
use it: keys and endpoints from the environment, retries with backoff."""
