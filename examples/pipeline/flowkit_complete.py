# The "Complete Example" of FlowKit's README, unchanged except for its import lines.
from kodo_bus.flowkit import Node
from kodo_bus.flowkit import Logger

node = Node()
logger = Logger(node)

async def main():
    try:
        await logger.info("Starting data processing")
        
        # Get inputs
        inputs = node.get_inputs()
        await logger.debug(f"Inputs: {inputs}")
        
        # Validate
        if "data" not in inputs:
            await logger.error("Missing required input: data")
            return [], {}, "Missing data"
        
        # Process
        result = process_data(inputs["data"])
        await logger.info(f"Processed {len(result)} items")
        
        # Success
        return ["next_node"], {"result": result}, "Success"
        
    except Exception as e:
        await logger.error(f"Error: {e}", include_traceback=True)
        return [], {}, str(e)

def process_data(data):
    # Your processing logic
    return data.upper()

node.register_main(main)
node.run()
