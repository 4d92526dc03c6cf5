# Flask-WTF 1.3: the names the portal uses (the package has no py.typed).
from flask_wtf.csrf import CSRFProtect as CSRFProtect
from flask_wtf.form import FlaskForm as FlaskForm
