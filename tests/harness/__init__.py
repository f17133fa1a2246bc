"""Real-broker test harness: throwaway RabbitMQ nodes and clusters on loopback."""
