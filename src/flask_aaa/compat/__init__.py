"""A way out of Flask-User: run its apps on Flask-AAA, then migrate.

``flask_aaa.compat.flask_user`` offers the names a Flask-User 1.0 app imports
(``UserManager``, ``UserMixin``, ``current_user``, ``login_required``, ...). See
docs/flask-user.md for the design, the migration steps and the deliberate differences.
"""
