"""pivotal-sync: mirror CRM change events from Kafka into the Pivotal API."""
