"""Payment providers behind one interface (`PaymentProvider`): sandbox, 易支付, Alipay,
WeChat Pay. Providers verify callbacks and talk to gateways; they never touch the
database, which is the orders service's job."""

from engine.payments.base import (
    CallbackReply,
    NotifyRequest,
    PaymentErrorCode,
    PaymentNotice,
    PaymentOrder,
    PaymentProvider,
    PaymentProviderError,
    PaymentRejected,
    PayRequest,
    RefundResult,
    format_yuan,
    parse_yuan,
)
from engine.payments.registry import build_providers

__all__ = [
    "CallbackReply",
    "NotifyRequest",
    "PayRequest",
    "PaymentErrorCode",
    "PaymentNotice",
    "PaymentOrder",
    "PaymentProvider",
    "PaymentProviderError",
    "PaymentRejected",
    "RefundResult",
    "build_providers",
    "format_yuan",
    "parse_yuan",
]
