"""The demo (``make demo``, ``embedforge demo``) and the Debian documentation it runs on, apart from stages.

``run`` is the demo: ``embedforge run`` on Debian's perl-doc, then the Perl FAQ's real questions;
``perlfaq_data`` builds that corpus and the real-question BEIR folder; ``debian`` fetches Debian packages
(apt-get download + dpkg-deb, no root), also for the benchmarks. ``python -m embedforge.demo`` runs it.
"""
