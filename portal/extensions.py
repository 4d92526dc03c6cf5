"""The portal's Flask extensions, created here and bound in the application factory."""

from flask_babel import Babel
from flask_login import LoginManager
from flask_wtf import CSRFProtect

babel = Babel()
csrf = CSRFProtect()
login_manager = LoginManager()
