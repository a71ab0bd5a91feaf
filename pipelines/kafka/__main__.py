"""``python -m gyre.pipelines.kafka``: run one KRaft node (see `gyre.pipelines.kafka.config`)."""

from gyre.pipelines._common.env import parse_command_line
from gyre.pipelines.kafka.broker import exec_broker
from gyre.pipelines.kafka.config import BrokerConfig

if __name__ == "__main__":
    parse_command_line("gyre.pipelines.kafka", BrokerConfig)
    exec_broker(BrokerConfig.load())
