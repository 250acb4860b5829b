{# Run by mariadbd at every start (its --init-file), as root: the shop's database and the account
   the web nodes use. To change the password, put your own templates/db/init.sql next to the
   agent's configuration file (and give the web role the same password), then restart the db
   node. One statement per line, no SQL comments: mariadbd reads this file line by line. #}
{% set database = "magento" %}
{% set user = "magento" %}
{% set password = "magento" %}
CREATE DATABASE IF NOT EXISTS `{{ database }}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci;
CREATE USER IF NOT EXISTS '{{ user }}'@'%' IDENTIFIED BY '{{ password }}';
ALTER USER '{{ user }}'@'%' IDENTIFIED BY '{{ password }}';
GRANT ALL PRIVILEGES ON `{{ database }}`.* TO '{{ user }}'@'%';
