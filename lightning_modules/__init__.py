from lightning_modules.bridge import BridgeModule
from lightning_modules.dds import DDSModule
