"""Flask-AAA: authentication, authorization and accounting for Flask."""

from .errors import AAAError as AAAError
from .errors import AuthenticationFailed as AuthenticationFailed
from .errors import ConfigurationError as ConfigurationError
from .errors import ExpiredToken as ExpiredToken
from .errors import ImpersonationForbidden as ImpersonationForbidden
from .errors import InvalidInput as InvalidInput
from .errors import InvalidToken as InvalidToken
from .errors import InvitationRequired as InvitationRequired
from .errors import LoginRequired as LoginRequired
from .errors import PermissionDenied as PermissionDenied
from .errors import ReauthenticationRequired as ReauthenticationRequired
from .errors import TokenNotAccepted as TokenNotAccepted
from .errors import TokenRejected as TokenRejected
from .extension import AAA as AAA
from .models import ApiToken as ApiToken
from .models import AuditEvent as AuditEvent
from .models import Base as Base
from .models import Permission as Permission
from .models import Role as Role
from .models import User as User
from .services.actors import Actor as Actor
from .services.actors import RequestFacts as RequestFacts
from .services.audit import Target as Target
from .services.rules import Decision as Decision
from .services.rules import Rule as Rule
from .web.bearer import current_token as current_token
from .web.context import current_user as current_user
from .web.context import record_event as record_event
from .web.decorators import audited as audited
from .web.decorators import auth_required as auth_required
from .web.decorators import fresh_login_required as fresh_login_required
from .web.decorators import login_required as login_required
from .web.decorators import not_while_impersonating as not_while_impersonating
from .web.decorators import permissions_accepted as permissions_accepted
from .web.decorators import permissions_required as permissions_required
from .web.decorators import public as public
from .web.decorators import roles_accepted as roles_accepted
from .web.decorators import roles_required as roles_required
from .web.rules import filter_allowed as filter_allowed
from .web.rules import require as require

__version__ = "0.1.0"
