"""``python -m gyre.pipelines.kafka``: run one KRaft node (see `gyre.pipelines.kafka.config`)."""

from gyre.pipelines.kafka.broker import exec_broker
from gyre.pipelines.kafka.config import BrokerConfig

if __name__ == "__main__":
    exec_broker(BrokerConfig.load())
