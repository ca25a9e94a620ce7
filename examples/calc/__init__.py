"""The seed 002 fan-out example (kodosumi's `my_service.calc`) ported to kodo-bus."""
